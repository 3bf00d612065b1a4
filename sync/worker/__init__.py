"""What RQ runs: the jobs, the queues they go on, the worker process. Imports sync.partnero and the
layers below it."""
