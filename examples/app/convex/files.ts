import { mutation, query } from "./_generated/server";
import { v } from "convex/values";

// The restore drill (tools/restore_drill.py) stores a file and reads it back after a restore.
export const generateUploadUrl = mutation({
  args: {},
  handler: async (ctx) => await ctx.storage.generateUploadUrl(),
});

export const save = mutation({
  args: { marker: v.string(), storageId: v.id("_storage") },
  handler: async (ctx, args) => await ctx.db.insert("files", { marker: args.marker, storageId: args.storageId }),
});

export const byMarker = query({
  args: { marker: v.string() },
  handler: async (ctx, args) => {
    const rows = await ctx.db
      .query("files")
      .withIndex("by_marker", (q) => q.eq("marker", args.marker))
      .collect();
    return await Promise.all(rows.map(async (row) => ({ ...row, url: await ctx.storage.getUrl(row.storageId) })));
  },
});
