"""The only code that speaks to Salesforce: the client, the flush, and when flushes run."""
