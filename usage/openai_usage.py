"""OpenAI-compatible organization usage and costs (GET /v1/organization/usage/completions,
/usage/embeddings and /costs), read from the ledger by Django."""

urlpatterns = []
