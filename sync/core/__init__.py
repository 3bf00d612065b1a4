"""Pure primitives: a delivery's envelope, signatures, the error kinds, retry backoff. No I/O; imports
nothing else of sync."""
