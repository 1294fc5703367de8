"""What people and tools see: the admin's usage pages, the DRF usage and budget APIs, the
OpenAI-shaped organization usage and costs API, and who may see whose usage (`permissions`)."""
