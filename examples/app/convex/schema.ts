import { defineSchema, defineTable } from "convex/server";
import { v } from "convex/values";

export default defineSchema({
  // One row per e2e run; `marker` is unique per run so the check finds exactly its own row.
  messages: defineTable({ marker: v.string(), body: v.string() }).index("by_marker", ["marker"]),
  // One file per restore drill (tools/restore_drill.py).
  files: defineTable({ marker: v.string(), storageId: v.id("_storage") }).index("by_marker", ["marker"]),
});
