"""A delivery's way through: intake, the processor, outcomes, replay, requeue, the sweeper."""
