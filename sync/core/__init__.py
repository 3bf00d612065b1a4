"""Pure primitives: a delivery's envelope, signatures, the error kinds, retry backoff, the clock's
type. No I/O (``clock.system_clock``, the one reader of the machine's time, is handed to the
adapters, never called here); imports nothing else of sync."""
