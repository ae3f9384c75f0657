"""The query parameters of every paged read: the records after `after_id`, `limit` at most."""

from typing import Annotated

from fastapi import Query

from api.schemas import MAX_PAGE_LIMIT

AfterId = Annotated[int, Query(ge=0, le=2**63 - 1)]
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE_LIMIT)]
