"""The gateway's models, one module per concept; this package is their public face (Django finds the
models here, and migration 0007 names `gateway.models.new_project_public_id`)."""

from gateway.models.api_keys import KEY_PREFIX, VISIBLE_PREFIX_LENGTH, ApiKey, hash_key
from gateway.models.facades import (ModelFacade, credential_variable_allowed, credential_variable_error, may_route,
                                    shown_routing_value)
from gateway.models.projects import (DEFAULT_PROJECT_ID, DEFAULT_PROJECT_PUBLIC_ID, Project, ProjectMember,
                                     new_project_public_id)

__all__ = ["DEFAULT_PROJECT_ID", "DEFAULT_PROJECT_PUBLIC_ID", "KEY_PREFIX", "VISIBLE_PREFIX_LENGTH", "ApiKey",
           "ModelFacade", "Project", "ProjectMember", "credential_variable_allowed", "credential_variable_error",
           "hash_key", "may_route", "new_project_public_id", "shown_routing_value"]
