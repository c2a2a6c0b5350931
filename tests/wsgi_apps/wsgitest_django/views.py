"""Views: a page, a JSON view showing how Django sees the mount, and a CSRF-protected form."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template import engines
from django.urls import reverse

FORM = engines["django"].from_string(
    '<form method="post" action="{{ action }}">{% csrf_token %}<input name="name"><button>Send</button></form>'
)


def home(request: HttpRequest) -> HttpResponse:
    return HttpResponse("django home", content_type="text/plain")


def item(request: HttpRequest, item_id: int) -> JsonResponse:
    return JsonResponse(
        {
            "id": item_id,
            "path": request.path,
            "path_info": request.path_info,
            "reverse": reverse("item", args=[item_id]),
            "absolute": request.build_absolute_uri(),
        }
    )


def form(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        return HttpResponse(f"thanks {request.POST.get('name', '')}", content_type="text/plain")
    return HttpResponse(FORM.render({"action": reverse("form")}, request))
