import { httpRouter } from "convex/server";
import { httpAction } from "./_generated/server";
import { api } from "./_generated/api";

const http = httpRouter();

// GET <convex_site_url>/messages?marker=... : the same rows as the byMarker query, over the site origin.
http.route({
  path: "/messages",
  method: "GET",
  handler: httpAction(async (ctx, request) => {
    const marker = new URL(request.url).searchParams.get("marker") ?? "";
    const rows = await ctx.runQuery(api.messages.byMarker, { marker });
    return new Response(JSON.stringify(rows), { status: 200, headers: { "Content-Type": "application/json" } });
  }),
});

export default http;
