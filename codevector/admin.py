from django.contrib import admin


class CodeVectorAdminSite(admin.AdminSite):
    site_header = "CodeVector"
    site_title = "CodeVector admin"
    index_title = "Gateway administration"
