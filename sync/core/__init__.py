"""Pure primitives: the envelope of a delivery, signatures, errors, backoff."""
