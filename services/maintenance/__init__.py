"""Scheduled database maintenance jobs (run by a Kubernetes CronJob and by the local runner)."""
