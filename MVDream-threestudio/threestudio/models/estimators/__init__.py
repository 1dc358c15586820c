from .occupancy_grid import OccGridEstimator, OccupancyGrid  # noqa: F401
