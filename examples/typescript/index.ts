// A Convex self-hosted backend on Google Cloud, declared from TypeScript through the convex-gcp
// component package. The arguments are convex-gcp's configuration keys (its README, "Configuration
// reference"), checked by the same rules: a bad value fails the preview before anything is created.
import * as pulumi from "@pulumi/pulumi";
import * as convexgcp from "@pulumi/convex-gcp";

const gcp = new pulumi.Config("gcp");
const config = new pulumi.Config();

const convex = new convexgcp.ConvexOnGcp("convex", {
    project: gcp.require("project"),
    region: gcp.get("region") ?? "us-central1",
    environment: config.get("environment") ?? "dev",
    connectionMode: "proxy",
    database: {
        tier: "db-g1-small",
        availability: "ZONAL",
        backups: {
            enabled: true,
            pointInTimeRecovery: false,
            retainedBackups: 3,
        },
    },
    vm: {
        machineType: "e2-medium",
        dataDiskSizeGb: 20,
    },
    convex: {
        instanceName: "convex-dev",
        dashboard: true,
    },
});

// The outputs contract (convex-gcp docs/outputs.md), as the component's properties.
export const convexUrl = convex.convexUrl;
export const convexSiteUrl = convex.convexSiteUrl;
export const dashboardUrl = convex.dashboardUrl;
export const adminKeySecret = convex.adminKeySecret;
export const sqlConnectionName = convex.sqlConnectionName;
export const vmName = convex.vmName;
export const vmZone = convex.vmZone;
