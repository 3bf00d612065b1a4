"""The only code that speaks to Salesforce: the client, the flush of the outbox, and when flushes run.
Imports sync.ops, sync.store and the layers below them."""
