/* The TensorFlow C library's smoke test: `invoke libtensorflow` compiles and runs this file with
 * no -I or -L flags, and the version it prints must be the installed TensorFlow's. By hand:
 *     gcc scripts/hello_tf.c -ltensorflow -o hello_tf && ./hello_tf
 */
#include <stdio.h>
#include <tensorflow/c/c_api.h>

int main(void) {
  printf("%s\n", TF_Version());
  return 0;
}
