"""The pure business rules: which state of a record wins, the commission ledger's entries, drift, and
Partnero's listed objects as deliveries. No I/O; imports only sync.mapping and sync.core."""
