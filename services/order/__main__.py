from services.kit.app import main
from services.order.app import OrderSettings, init_app

main(init_app, OrderSettings)
