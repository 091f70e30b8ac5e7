import { mutation, query } from "./_generated/server";
import { v } from "convex/values";

export const send = mutation({
  args: { marker: v.string(), body: v.string() },
  handler: async (ctx, args) => {
    return await ctx.db.insert("messages", { marker: args.marker, body: args.body });
  },
});

export const byMarker = query({
  args: { marker: v.string() },
  handler: async (ctx, args) => {
    return await ctx.db
      .query("messages")
      .withIndex("by_marker", (q) => q.eq("marker", args.marker))
      .collect();
  },
});
