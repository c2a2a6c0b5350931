from django.urls import path

from wsgitest_django import views

urlpatterns = [
    path("", views.home, name="home"),
    path("form/", views.form, name="form"),
    path("items/<int:item_id>/", views.item, name="item"),
]
