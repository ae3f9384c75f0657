from fastapi import APIRouter, Request, Response
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from api.schemas import Health

router = APIRouter(tags=["health"])


@router.get(
    "/health", responses={503: {"model": Health, "description": "The database is unreachable."}}
)
def read_health(request: Request, response: Response) -> Health:
    """Liveness and database reachability (no token needed)."""
    try:
        with request.app.state.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        ok = True
    except SQLAlchemyError:
        ok = False
        response.status_code = 503
    return Health(status="ok" if ok else "degraded", database=ok, version=request.app.version)
