"""``/v1/tasks``: the catalogue, with each task's input and output JSON Schema."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from schemas import TASKS

bp = Blueprint("tasks", __name__, url_prefix="/v1/tasks")


@bp.get("")
def list_tasks() -> Response:
    return jsonify({"tasks": [spec.describe() for spec in TASKS.values()]})
