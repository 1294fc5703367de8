"""The docs pages under /docs/: templates in templates/docs/, one per page, no data of anyone's."""

from django.http import Http404
from django.shortcuts import render

PAGES = {
    "": ("index", "Overview"),
    "quickstart": ("quickstart", "Quickstart"),
    "usage": ("usage", "Usage"),
    "leaderboard": ("leaderboard", "Leaderboard"),
    "budgets": ("budgets", "Budgets"),
    "models": ("models", "Models"),
    "api": ("api", "API"),
}


def docs_page(request, page: str = ""):
    if page not in PAGES:
        raise Http404("No such docs page")
    template, title = PAGES[page]
    ctx = {
        "title": title,
        "pages": [(slug, label) for slug, (_, label) in PAGES.items()],
        "current": page,
        # The server's own origin: what the examples show before (or without) JavaScript.
        "gateway": f"{request.scheme}://{request.get_host()}",
    }
    return render(request, f"docs/{template}.html", ctx)
