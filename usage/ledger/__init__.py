"""The write path, run on every request: a usage delta (`delta`), the statements one write runs
(`plan`), the group commit that batches concurrent deltas (`committer`), the database writers
(`writers`, over `pgwire`'s one-round-trip exchange) and their metrics (`metrics`). The gateway
enters it through usage.store."""
