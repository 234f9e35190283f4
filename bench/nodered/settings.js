// Node-RED settings for bench/peer.py (copied with flow.json into the git-ignored bench/.node-red/).
// Loopback only, no editor, no admin API, no HTTP nodes: the runtime runs flow.json and nothing else.
module.exports = {
    flowFile: "flow.json",
    credentialSecret: false,
    uiHost: "127.0.0.1",
    uiPort: parseInt(process.env.NODE_RED_PORT || "1880", 10),
    httpAdminRoot: false,
    httpNodeRoot: false,
    disableEditor: true,
    // the pg client for the function node: global.get("pg")
    functionGlobalContext: { pg: require("pg") },
    functionExternalModules: false,
    externalModules: { autoInstall: false, palette: { allowInstall: false } },
    telemetry: { enabled: false },
    diagnostics: { enabled: false, ui: false },
    runtimeState: { enabled: false, ui: false },
    logging: { console: { level: "info", metrics: false, audit: false } },
    editorTheme: { projects: { enabled: false } },
};
