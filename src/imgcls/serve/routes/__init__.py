"""The REST routes (v1), health and the page: one router per resource. Each path function
parses the request, calls the `Service`, and returns a typed response model."""
