"""vdsClient: the command-line client of vdsmd (VDSM's legacy verbs over XML-RPC)."""
