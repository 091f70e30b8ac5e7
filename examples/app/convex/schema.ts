import { defineSchema, defineTable } from "convex/server";
import { v } from "convex/values";

export default defineSchema({
  // One row per e2e run; `marker` is unique per run so the check finds exactly its own row.
  messages: defineTable({ marker: v.string(), body: v.string() }).index("by_marker", ["marker"]),
});
