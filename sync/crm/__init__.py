"""Salesforce: the outbox committed with the warehouse, the client, and the flush."""
