"""The jobs adapter: /v1/jobs (routes), their runner on the engine workers, and their store on disk."""
