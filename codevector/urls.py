from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from codevector.docs import docs_page
from usage.web import api
from usage.web.api_budgets import BudgetDetail, BudgetList, MyBudgets

urlpatterns = [
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
    path("admin/", admin.site.urls),
    path("docs/", docs_page, name="docs-index"),
    path("docs/<slug:page>/", docs_page, name="docs-page"),
    path("api/usage/summary/", api.SummaryView.as_view(), name="api-usage-summary"),
    path("api/usage/series/", api.SeriesView.as_view(), name="api-usage-series"),
    path("api/usage/models/", api.ModelsView.as_view(), name="api-usage-models"),
    path("api/usage/leaderboard/", api.LeaderboardView.as_view(), name="api-usage-leaderboard"),
    path("api/usage/keys/", api.KeysView.as_view(), name="api-usage-keys"),
    path("api/usage/projects/", api.ProjectsView.as_view(), name="api-usage-projects"),
    path("api/projects/<str:public_id>/usage/", api.ProjectUsageView.as_view(), name="api-project-usage"),
    path("api/me/usage/", api.MyUsageView.as_view(), name="api-my-usage"),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("api/budgets/", BudgetList.as_view(), name="api-budgets"),
    path("api/budgets/<int:pk>/", BudgetDetail.as_view(), name="api-budget"),
    path("api/me/budgets/", MyBudgets.as_view(), name="api-my-budgets"),
    path("v1/organization/", include("usage.web.openai_usage")),  # routed here by codevector.asgi, not the gateway
]
