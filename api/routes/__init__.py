from fastapi import APIRouter

from api.routes import backfills, health, media, plans, projects, runs

api_router = APIRouter()
api_router.include_router(health.router)
api_router.include_router(media.router)
api_router.include_router(backfills.router)
api_router.include_router(projects.router)
api_router.include_router(plans.router)
api_router.include_router(runs.router)
