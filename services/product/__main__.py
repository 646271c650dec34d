from services.kit.app import main
from services.product.app import ProductSettings, init_app

main(init_app, ProductSettings)
