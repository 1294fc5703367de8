"""Every read of the ledger: the 7/30/90-day windows, totals, series and rankings the pages and
APIs show (`queries`), and degraded mode as the banner shows it (`buffer_overview`). Presentation
(usage.web) reads through these modules, never through the write path."""
