/* The guest command's encoding on the kernel command line. */
#include <string.h>

#include "base64.h"
#include "unit.h"

START_TEST(round_trip_every_length)
{
	uint8_t src[64], back[64];
	char enc[100];
	size_t n, i;

	for (i = 0; i < sizeof(src); i++)
		src[i] = (uint8_t)(i * 37 + 200);
	for (n = 0; n <= sizeof(src); n++) {
		b64url_encode(src, n, enc);
		ck_assert_uint_eq(strlen(enc), b64url_encoded_len(n));
		ck_assert_ptr_null(strpbrk(enc, "+/= "));
		ck_assert_int_eq(b64url_decode(enc, strlen(enc), back), (long)n);
		ck_assert_int_eq(memcmp(src, back, n), 0);
	}
}
END_TEST

START_TEST(known_vectors)
{
	char enc[16];

	b64url_encode((const uint8_t *)"foob", 4, enc);
	ck_assert_str_eq(enc, "Zm9vYg");
	b64url_encode((const uint8_t *)"\xfb\xff", 2, enc);
	ck_assert_str_eq(enc, "-_8");
}
END_TEST

START_TEST(bad_input_refused)
{
	uint8_t out[16];

	ck_assert_int_eq(b64url_decode("Zm9v+g", 6, out), -1);
	ck_assert_int_eq(b64url_decode("Zm9vY", 5, out), -1);
	ck_assert_int_eq(b64url_decode("Zm 9", 4, out), -1);
}
END_TEST

Suite *suite_base64(void)
{
	Suite *s = suite_create("base64");
	TCase *tc = tcase_create("codec");

	tcase_add_test(tc, round_trip_every_length);
	tcase_add_test(tc, known_vectors);
	tcase_add_test(tc, bad_input_refused);
	suite_add_tcase(s, tc);
	return s;
}
