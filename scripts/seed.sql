-- Reference rows and a few orders for the local pipeline (the shape of the real source).
INSERT INTO address (address_line_1, address_line_2, district, city, postal_code, country, phone, last_updated)
SELECT g || ' Gutmann Forges', CASE WHEN g % 3 = 0 THEN NULL ELSE 'Suite ' || g END,
       CASE WHEN g % 4 = 0 THEN NULL ELSE 'Avon' END, 'New Patienceburgh', lpad(g::text, 5, '0'),
       'Turkey', '1803 637401', now()
FROM generate_series(1, 30) g;
INSERT INTO currency (currency_code, last_updated) VALUES ('GBP', now()), ('USD', now()), ('EUR', now());
INSERT INTO department (department_name, location, manager, last_updated) VALUES
  ('Sales', 'Manchester', 'Richard Roma', now()), ('Purchasing', 'Manchester', 'Naomi Lapaglia', now()),
  ('Production', 'Leeds', 'Chester Ryan', now()), ('Dispatch', 'Leds', 'Mark Hanna', now()),
  ('Finance', 'Manchester', 'Jordan Belfort', now()), ('Facilities', 'Manchester', 'Shelley Levene', now()),
  ('Communications', 'Leeds', 'Ann Blake', now()), ('HR', 'Leeds', 'James Link', now());
INSERT INTO staff (first_name, last_name, department_id, email_address, last_updated)
SELECT 'Staff' || g, CASE WHEN g = 7 THEN 'O''Keefe' ELSE 'Surname' || g END, 1 + g % 8,
       'staff' || g || '@terrifictotes.com', now()
FROM generate_series(1, 20) g;
INSERT INTO payment_type (payment_type_name, last_updated) VALUES
  ('SALES_RECEIPT', now()), ('SALES_REFUND', now()), ('PURCHASE_PAYMENT', now()), ('PURCHASE_REFUND', now());
INSERT INTO counterparty (counterparty_legal_name, legal_address_id, commercial_contact, delivery_contact, last_updated)
SELECT 'Fahey and Sons ' || g, 1 + g % 30, 'Micheal Toy', 'Mrs. Lucy Runolfsdottir', now()
FROM generate_series(1, 20) g;
INSERT INTO design (design_name, file_location, file_name, last_updated)
SELECT 'Wooden', '/usr', 'wooden-' || g || '.json', now() FROM generate_series(1, 50) g;
