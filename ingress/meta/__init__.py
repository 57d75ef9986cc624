"""Routes about the service rather than a resource: health, the task catalogue, the OpenAPI
document and the console."""
