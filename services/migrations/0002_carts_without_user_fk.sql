-- Carts belong to the order service, which knows shoppers by the id in their token, like
-- orders do: no foreign key into the user service's table.
ALTER TABLE carts DROP CONSTRAINT carts_user_id_fkey;
