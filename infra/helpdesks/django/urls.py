from django.conf import settings
from django.contrib import admin
from django.urls import include, path, re_path
from django.views.static import serve
from rest_framework.decorators import api_view, permission_classes
from rest_framework.permissions import IsAdminUser


@api_view(["GET"])
@permission_classes([IsAdminUser])
def media(request, path):
    """An attachment (the API's `file` URLs), for staff, with the API's authentication.

    A real deployment serves MEDIA_ROOT from its web server; runserver with DEBUG off serves
    nothing by itself.
    """
    return serve(request, path, document_root=settings.MEDIA_ROOT)


urlpatterns = [
    path("admin/", admin.site.urls),
    path("helpdesk/", include("helpdesk.urls", namespace="helpdesk")),
    re_path(r"^media/(?P<path>.*)$", media),
]
