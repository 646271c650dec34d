from services.kit.app import main
from services.user.app import UserSettings, init_app

main(init_app, UserSettings)
