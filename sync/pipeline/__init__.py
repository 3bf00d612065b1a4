"""A delivery's way through: intake, the processor, what follows a batch (outcomes), replay, requeue,
the sweeper. Imports sync.salesforce and the layers below it."""
