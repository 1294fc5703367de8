"""Usage: the ledger and everything that reads it. The write path (`store`, `ledger/`, `degraded/`)
runs on every request and imports nothing of the reads, budgets or pages; the pages and APIs
(`web/`) read through `reads/` and `budgets/`. docs/layout.md has every module in one line."""
