from services.inventory.app import InventorySettings, init_app
from services.kit.app import main

main(init_app, InventorySettings)
