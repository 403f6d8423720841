"""What vdsmd shows of the host to people and to Prometheus, read-only: the host's state read
through the API's own verbs (so it says exactly what the API says), the Prometheus metrics
built from it and from the calls the dispatcher reports, and the web page that shows it live.
Served by the HTTP server as GET views, behind the same TLS and client certificates as the
API (docs/observe.md)."""
