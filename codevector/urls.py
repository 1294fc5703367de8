from django.contrib import admin
from django.urls import path
from django.views.generic import RedirectView

from usage.api_budgets import BudgetDetail, BudgetList, MyBudgets

urlpatterns = [
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
    path("admin/", admin.site.urls),
    path("api/budgets/", BudgetList.as_view(), name="api-budgets"),
    path("api/budgets/<int:pk>/", BudgetDetail.as_view(), name="api-budget"),
    path("api/me/budgets/", MyBudgets.as_view(), name="api-my-budgets"),
]
