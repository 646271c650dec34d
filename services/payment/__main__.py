from services.kit.app import main
from services.payment.app import PaymentSettings, init_app

main(init_app, PaymentSettings)
