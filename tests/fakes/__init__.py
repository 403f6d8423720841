"""Named fakes for what real components cannot be made to do on demand (see each module)."""
