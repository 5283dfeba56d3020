"""The deployer daemon: claim jobs, fetch source, build, publish, promote."""
