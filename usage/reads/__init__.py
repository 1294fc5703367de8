"""Every read of the ledger, through one engine (`engine`: exact sums over spans, one statement a
read): the 7/30/90-day windows, totals, series and rankings the pages and APIs show (`queries`),
spend against budgets (`spend`), the OpenAI-shaped usage and costs (`openai`), and degraded mode as
the banner shows it (`buffer_overview`). Presentation (usage.web) reads through these modules, never
through the write path."""
