"""The job engine: job records, stages, consumer loop, retries, recovery, fleet, logs."""
