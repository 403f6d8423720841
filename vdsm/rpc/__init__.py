"""RPC bindings: XML-RPC (VDSM's legacy verbs, positional) and JSON-RPC 2.0 (named), both
driven by the schema in vdsm_api, over one HTTP server."""
